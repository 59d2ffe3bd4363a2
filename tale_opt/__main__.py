from tale_opt.cli import main

if __name__ == "__main__":
    main()
