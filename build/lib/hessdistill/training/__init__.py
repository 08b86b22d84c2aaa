"""Lightning glue: the DistillModule and its callbacks (the math lives in hessian.py and losses.py)."""
