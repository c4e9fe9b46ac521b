"""Store of record: SQLAlchemy 2 models, engine set-up and Alembic migrations."""
