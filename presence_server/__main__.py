from presence_server.cli import main

main()
