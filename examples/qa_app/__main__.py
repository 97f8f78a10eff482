"""`python -m examples.qa_app [--data-dir DIR] [--port 8000] ...`: serve the document QA app."""

from .app import main

if __name__ == "__main__":
    main()
