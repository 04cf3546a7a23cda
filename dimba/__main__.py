from dimba.cli import main

main()
