-- pgveil demo CRM: departments, teams, customers, orders, payments, products, tickets,
-- opportunities. Deterministic data (a few thousand rows).
CREATE TABLE customers (
    id           serial PRIMARY KEY,
    name         text NOT NULL,
    email        text,
    phone        text,
    owner        text NOT NULL,
    department   text NOT NULL,
    team         text,
    region       text,
    credit_limit numeric(12,2),
    notes        text,
    created_at   timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    amount      numeric(12,2) NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    owner       text,
    department  text,
    created_at  timestamptz NOT NULL DEFAULT '2026-02-01 00:00:00+00'
);
CREATE TABLE payments (
    id         serial PRIMARY KEY,
    order_id   integer NOT NULL REFERENCES orders(id),
    amount     numeric(12,2) NOT NULL,
    method     text NOT NULL,
    card_last4 text,
    paid_at    timestamptz
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   text UNIQUE NOT NULL,
    name  text NOT NULL,
    price numeric(10,2) NOT NULL,
    cost  numeric(10,2) NOT NULL,
    stock integer NOT NULL
);
CREATE TABLE tickets (
    id          serial PRIMARY KEY,
    customer_id integer REFERENCES customers(id),
    subject     text NOT NULL,
    status      text NOT NULL,
    priority    text NOT NULL,
    assignee    text,
    department  text,
    team        text
);
CREATE TABLE opportunities (
    id          serial PRIMARY KEY,
    customer_id integer REFERENCES customers(id),
    title       text NOT NULL,
    value       numeric(12,2),
    stage       text NOT NULL,
    owner       text,
    department  text
);
-- not declared as a pgveil object: restricted users cannot read it at all
CREATE TABLE internal_salaries (employee text PRIMARY KEY, salary numeric(12,2));

-- Owners cycle through the demo employees; departments follow the owner.
CREATE TEMP TABLE owners (i int, owner text, department text, team text);
INSERT INTO owners VALUES
    (0, 'rita', 'sales_east', 'east_a'), (1, 'sam', 'sales_east', 'east_a'),
    (2, 'dana', 'sales_west', 'west_a'), (3, 'tom', 'sales_west', 'west_a'),
    (4, 'carl', 'service', 'support_1'), (5, 'maria', 'sales', NULL),
    (6, 'rita', 'sales_east', 'east_b'), (7, 'dana', 'sales_west', 'west_a');

INSERT INTO customers (name, email, phone, owner, department, team, region, credit_limit, notes)
SELECT 'Customer ' || g,
       'contact' || g || '@example.com',
       '+1-555-' || lpad((1000 + g)::text, 4, '0'),
       o.owner, o.department, o.team,
       (ARRAY['north', 'south', 'east', 'west'])[1 + g % 4],
       (1000 + (g * 37) % 9000)::numeric,
       CASE WHEN g % 10 = 0 THEN 'VIP: handle with care' END
FROM generate_series(1, 2000) g JOIN owners o ON o.i = g % 8;
-- the guest contractor is assigned five customers
UPDATE customers SET owner = 'gina' WHERE id IN (11, 22, 33, 44, 55);

INSERT INTO orders (customer_id, amount, status, owner, department)
SELECT c.id, ((g * 53) % 5000 + 10)::numeric, (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4],
       c.owner, c.department
FROM generate_series(1, 5000) g JOIN customers c ON c.id = 1 + (g * 7) % 2000;

INSERT INTO payments (order_id, amount, method, card_last4, paid_at)
SELECT o.id, o.amount, (ARRAY['card', 'wire', 'cash'])[1 + g % 3], lpad(((g * 31) % 10000)::text, 4, '0'),
       '2026-03-01 00:00:00+00'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 4000) g JOIN orders o ON o.id = g;

INSERT INTO products (sku, name, price, cost, stock)
SELECT 'SKU-' || lpad(g::text, 4, '0'), 'Product ' || g, (10 + g % 90)::numeric, (5 + g % 40)::numeric, g % 300
FROM generate_series(1, 200) g;

INSERT INTO tickets (customer_id, subject, status, priority, assignee, department, team)
SELECT 1 + (g * 11) % 2000, 'Ticket ' || g, (ARRAY['open', 'pending', 'closed'])[1 + g % 3],
       (ARRAY['low', 'normal', 'high'])[1 + g % 3], CASE WHEN g % 2 = 0 THEN 'carl' ELSE 'sam' END,
       'service', 'support_1'
FROM generate_series(1, 1500) g;

INSERT INTO opportunities (customer_id, title, value, stage, owner, department)
SELECT c.id, 'Deal ' || g, ((g * 97) % 50000)::numeric, (ARRAY['lead', 'proposal', 'won', 'lost'])[1 + g % 4],
       c.owner, c.department
FROM generate_series(1, 500) g JOIN customers c ON c.id = 1 + (g * 13) % 2000;

INSERT INTO internal_salaries VALUES ('rita', 50000), ('maria', 90000);
ANALYZE;
