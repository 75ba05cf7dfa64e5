from text2brain.cli import main

main()
