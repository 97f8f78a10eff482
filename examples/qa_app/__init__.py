"""Document QA web app: upload files, ask questions, answers streamed from compressed (or raw) context.

Start it from the repository root with ``.venv/bin/python -m examples.qa_app`` (see README.md).
"""

from .app import create_app, main
from .service import QAService, Settings

__all__ = ["QAService", "Settings", "create_app", "main"]
