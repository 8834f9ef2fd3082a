from redvillm.entry import extract

extract()
