# The two entry points of the README: each installs what it needs.
.PHONY: demo test

demo:
	bash scripts/demo

test:
	bash scripts/test
