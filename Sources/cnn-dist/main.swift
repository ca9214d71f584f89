import CnnCLI

CnnDist.main()
