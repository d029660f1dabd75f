-- Prefect keeps its own database: both it and Watchkeeper track migrations in alembic_version.
CREATE DATABASE prefect OWNER watchkeeper;
