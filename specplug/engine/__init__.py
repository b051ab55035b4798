"""The embedded engine's decode loop (rows joining and leaving, propose / verify / accept / roll back)."""
