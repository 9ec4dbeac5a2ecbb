from sparse_tubes.main import run

run()
