"""What users run: the command line, the HTTP service, the tutorial demo and plots."""
