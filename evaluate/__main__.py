from redvillm.evaluate.cli import main

main()
