from agop_sweep.run.app import main

main()
