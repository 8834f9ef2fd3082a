from redvillm.extract.cli import main

main()
