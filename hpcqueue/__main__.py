from hpcqueue.cli import main

main()
