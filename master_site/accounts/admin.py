# The stock UserAdmin edits users on the master; change capture is on the model, so admin edits sync.
