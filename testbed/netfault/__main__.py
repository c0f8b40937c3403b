from testbed.netfault.server import main

main()
