from bench.report import Result
NAME = "sse".replace("_", "-")
def run(ctx):
    return Result(NAME, NAME).skip("todo")
