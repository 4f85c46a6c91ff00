// An application-style Node.js client through pgveil: node-postgres (`pg`) with parameterized
// queries (extended protocol, unnamed statements), a named prepared statement reused, a
// transaction rolled back, a pool of connections, and an error that leaves the client usable.
// Prints one JSON object of outcomes; tests/clients.rs checks them.
// Usage: node node_client.js PORT USER PASSWORD   (NODE_PATH: where `pg` is installed)
const { Client, Pool } = require("pg");

const [port, user, password] = process.argv.slice(2);
const config = { host: "127.0.0.1", port: Number(port), user, password, database: "crm" };
const out = {};

async function outcome(name, f) {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: e.code || String(e) };
  }
}

async function main() {
  const c = new Client(config);
  await c.connect();
  await outcome("count", async () => {
    const r = await c.query("SELECT count(*)::int AS n FROM customers WHERE id > $1", [0]);
    return r.rows[0].n;
  });
  await outcome("named", async () => {
    const ids = [];
    for (const i of [10, 11, 12]) {
      const r = await c.query({
        name: "customer_ids",
        text: "SELECT id FROM customers WHERE id >= $1 ORDER BY id LIMIT 1",
        values: [i],
      });
      ids.push(r.rows.length ? r.rows[0].id : null);
    }
    return ids;
  });
  await outcome("refused_then_usable", async () => {
    let refused = null;
    try {
      await c.query("SELECT * FROM internal_salaries LIMIT $1", [1]);
    } catch (e) {
      refused = e.code;
    }
    const r = await c.query("SELECT 1 AS one");
    return { refused, after: r.rows[0].one };
  });
  await outcome("rolled_back_update", async () => {
    await c.query("BEGIN");
    const first = await c.query("SELECT id FROM customers ORDER BY id LIMIT 1");
    const r = await c.query("UPDATE customers SET notes = notes WHERE id = $1", [first.rows[0].id]);
    await c.query("ROLLBACK");
    return r.rowCount;
  });
  await c.end();
  await outcome("pool", async () => {
    const pool = new Pool({ ...config, max: 4 });
    const counts = await Promise.all(
      [0, 1, 2, 3, 4, 5, 6, 7].map(() =>
        pool.query("SELECT count(*)::int AS n FROM customers").then((r) => r.rows[0].n)
      )
    );
    await pool.end();
    return counts;
  });
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
