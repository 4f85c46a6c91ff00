"""A BI-style Python client through pgveil: psycopg2 (simple protocol, client-side parameters,
server-side cursors, COPY, errors) and SQLAlchemy (catalog introspection, bound parameters).
Prints one JSON object of outcomes; tests/clients.rs compares them with what tokio-postgres
gets through pgveil and what PostgreSQL holds. Usage: psycopg_client.py PORT USER PASSWORD"""
import io
import json
import sys

import psycopg2
from sqlalchemy import create_engine, inspect, text

port, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}


conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="crm")
cur = conn.cursor()


def outcome(name, f):
    """Run one check; an error is recorded by SQLSTATE and the transaction rolled back."""
    try:
        out[name] = f()
    except psycopg2.Error as e:
        out[name] = {"error": e.pgcode}
    except Exception as e:  # SQLAlchemy wraps driver errors
        orig = getattr(e, "orig", None)
        out[name] = {"error": getattr(orig, "pgcode", None) or type(e).__name__}
    if not conn.closed:
        conn.rollback()


def first_rows():
    cur.execute("SELECT id, name, email FROM customers WHERE id > %s ORDER BY id LIMIT 5", (0,))
    return [list(r) for r in cur.fetchall()]


def count():
    cur.execute("SELECT count(*) FROM customers WHERE name <> %s", ("",))
    return cur.fetchone()[0]


def server_cursor():
    named = conn.cursor(name="bi_cursor")
    named.itersize = 7
    named.execute("SELECT id FROM customers ORDER BY id")
    ids = [r[0] for r in named.fetchmany(10)]
    named.close()
    conn.commit()
    return ids


def refused_then_usable():
    try:
        cur.execute("SELECT * FROM internal_salaries")
        refused = None
    except psycopg2.Error as e:
        refused = e.pgcode
    conn.rollback()
    cur.execute("SELECT 1")
    return {"refused": refused, "after": cur.fetchone()[0]}


def copy_out():
    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT id FROM customers ORDER BY id) TO STDOUT", buf)
    conn.commit()
    return len(buf.getvalue().splitlines())


def rolled_back_update():
    cur.execute("UPDATE customers SET notes = notes WHERE id = %s", (first_id,))
    n = cur.rowcount
    conn.rollback()
    return n


outcome("first_rows", first_rows)
first_id = out["first_rows"][0][0] if isinstance(out["first_rows"], list) else 0
outcome("count", count)
outcome("server_cursor", server_cursor)
outcome("refused_then_usable", refused_then_usable)
outcome("copy_out", copy_out)
outcome("rolled_back_update", rolled_back_update)
conn.close()

engine = create_engine(f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/crm")
insp = inspect(engine)
outcome("tables", lambda: sorted(insp.get_table_names()))
outcome("columns", lambda: [c["name"] for c in insp.get_columns("customers")])
outcome("pk", lambda: insp.get_pk_constraint("customers")["constrained_columns"])
outcome("fks", lambda: sorted(f["name"] for f in insp.get_foreign_keys("orders")))
outcome("indexes", lambda: sorted(i["name"] for i in insp.get_indexes("orders")))


def bound_query():
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM customers WHERE id > :x"), {"x": 0}).scalar()


outcome("sqlalchemy_count", bound_query)
print(json.dumps(out))
