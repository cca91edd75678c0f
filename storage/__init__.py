"""PostgreSQL pool, repositories, migrations runner, embedded PostgreSQL, Redis and broker adapters."""
