from redvillm.entry import train

train()
