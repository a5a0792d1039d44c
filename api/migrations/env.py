"""Alembic's environment for the API database's schema: migrations run on the connection
``api.db.migrate`` hands over when it opens a database, upgrading it to the newest revision. A schema
change is a new revision in ``versions/``; tests/api/test_migrations.py checks that the revisions build
exactly ``api.db.metadata``. (Not a package: Alembic loads these files itself.)"""

from alembic import context

from api.db import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
