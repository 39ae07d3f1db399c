from fedwhisper.cli import app

app(prog_name="fedwhisper")
