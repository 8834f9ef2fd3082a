from redvillm.entry import evaluate

evaluate()
