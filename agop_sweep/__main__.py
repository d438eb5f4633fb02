from agop_sweep.app import main

main()
