from tagging_worker.cli.main import main

main()
