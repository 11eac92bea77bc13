from ftadvisor.tui import main

main()
