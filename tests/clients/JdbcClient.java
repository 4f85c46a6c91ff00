// A DBeaver/Metabase-style Java client through pgveil: pgjdbc (extended protocol, server-side
// prepared statements after pgjdbc's prepare threshold, a fetch size read through a named
// portal in a transaction, errors) and DatabaseMetaData introspection as those tools use it.
// Prints one JSON object of outcomes; tests/clients.rs checks them.
// Usage: java -cp postgresql.jar JdbcClient.java PORT USER PASSWORD
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static final StringBuilder out = new StringBuilder("{");

    interface Check { String run(Connection c) throws Exception; }

    static void outcome(Connection c, String name, Check check) throws Exception {
        String value;
        try {
            value = check.run(c);
        } catch (SQLException e) {
            value = "{\"error\":\"" + e.getSQLState() + "\"}";
        }
        if (!c.getAutoCommit()) c.rollback();
        if (out.length() > 1) out.append(',');
        out.append('"').append(name).append("\":").append(value);
    }

    static String str(String s) { return s == null ? "null" : "\"" + s.replace("\"", "\\\"") + "\""; }

    static String list(List<String> items) { return "[" + String.join(",", items) + "]"; }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/crm";
        try (Connection c = DriverManager.getConnection(url, args[1], args[2])) {
            outcome(c, "count", x -> {
                // ten executions: pgjdbc switches to a named server-side statement after five
                long last = -1;
                try (PreparedStatement ps = x.prepareStatement("SELECT count(*) FROM customers WHERE id > ?")) {
                    for (int i = 0; i < 10; i++) {
                        ps.setInt(1, 0);
                        try (ResultSet rs = ps.executeQuery()) { rs.next(); last = rs.getLong(1); }
                    }
                }
                return Long.toString(last);
            });
            outcome(c, "fetch_ids", x -> {
                // a fetch size inside a transaction: a named portal read 7 rows at a time
                x.setAutoCommit(false);
                List<String> ids = new ArrayList<>();
                try (PreparedStatement ps = x.prepareStatement("SELECT id FROM customers ORDER BY id")) {
                    ps.setFetchSize(7);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next() && ids.size() < 20) ids.add(Integer.toString(rs.getInt(1)));
                    }
                }
                x.commit();
                x.setAutoCommit(true);
                return list(ids);
            });
            outcome(c, "refused_then_usable", x -> {
                String refused = "null";
                try (Statement s = x.createStatement()) {
                    s.executeQuery("SELECT * FROM internal_salaries").close();
                } catch (SQLException e) {
                    refused = str(e.getSQLState());
                }
                try (Statement s = x.createStatement(); ResultSet rs = s.executeQuery("SELECT 1")) {
                    rs.next();
                    return "{\"refused\":" + refused + ",\"after\":" + rs.getInt(1) + "}";
                }
            });
            DatabaseMetaData md = c.getMetaData();
            outcome(c, "tables", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                    while (rs.next()) t.add(str(rs.getString("TABLE_NAME")));
                }
                Collections.sort(t);
                return list(t);
            });
            outcome(c, "columns", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getColumns(null, "public", "customers", "%")) {
                    while (rs.next()) t.add(str(rs.getString("COLUMN_NAME")));
                }
                return list(t);
            });
            outcome(c, "pk", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getPrimaryKeys(null, "public", "customers")) {
                    while (rs.next()) t.add(str(rs.getString("COLUMN_NAME")));
                }
                return list(t);
            });
            outcome(c, "fks", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getImportedKeys(null, "public", "orders")) {
                    while (rs.next()) t.add(str(rs.getString("FK_NAME")));
                }
                return list(t);
            });
            outcome(c, "indexes", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getIndexInfo(null, "public", "customers", false, true)) {
                    while (rs.next()) t.add(str(rs.getString("INDEX_NAME")));
                }
                Collections.sort(t);
                return list(t);
            });
            outcome(c, "schemas", x -> {
                List<String> t = new ArrayList<>();
                try (ResultSet rs = md.getSchemas()) {
                    while (rs.next()) t.add(str(rs.getString("TABLE_SCHEM")));
                }
                Collections.sort(t);
                return list(t);
            });
        }
        System.out.println(out.append('}'));
    }
}
