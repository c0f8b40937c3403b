from testbed.cli.main import main

main()
