from redvillm.train.cli import main

main()
