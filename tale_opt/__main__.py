from tale_opt.commands.search import main

if __name__ == "__main__":
    main()
