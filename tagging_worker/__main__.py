from tagging_worker.cli import main

main()
