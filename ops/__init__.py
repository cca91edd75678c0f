"""Operations: settings, command line, gunicorn wiring, benchmarks and deployment files."""
