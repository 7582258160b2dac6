from se_convert._cli import run

run()
