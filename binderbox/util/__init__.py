"""Small general helpers with no binderbox state (standard library only)."""
