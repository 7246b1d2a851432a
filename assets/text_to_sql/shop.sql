-- A small synthetic shop (written for this demo, no real data): the database the text-to-SQL domain's
-- sql_execution scorer runs answers against. The scorer builds it into a throwaway DuckDB file each time
-- it scores, so the repository holds only this text; editing it changes the scorer's version (re-scores).

CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    city        VARCHAR NOT NULL,
    country     VARCHAR NOT NULL,
    signup_date DATE NOT NULL
);

CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    category   VARCHAR NOT NULL,
    price      DECIMAL(8, 2) NOT NULL
);

CREATE TABLE orders (
    order_id    INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
    product_id  INTEGER NOT NULL REFERENCES products (product_id),
    quantity    INTEGER NOT NULL,
    order_date  DATE NOT NULL,
    status      VARCHAR NOT NULL  -- placed, shipped, delivered or cancelled
);

INSERT INTO customers VALUES
    (1, 'Ada Moreau', 'Lyon', 'France', '2025-01-14'),
    (2, 'Bram de Vries', 'Utrecht', 'Netherlands', '2025-02-03'),
    (3, 'Chiara Russo', 'Turin', 'Italy', '2025-02-20'),
    (4, 'Dario Costa', 'Porto', 'Portugal', '2025-03-11'),
    (5, 'Elin Berg', 'Uppsala', 'Sweden', '2025-03-29'),
    (6, 'Farid Haddad', 'Lyon', 'France', '2025-04-07'),
    (7, 'Greta Hoffmann', 'Leipzig', 'Germany', '2025-04-22'),
    (8, 'Hugo Martin', 'Nantes', 'France', '2025-05-16'),
    (9, 'Ines Navarro', 'Valencia', 'Spain', '2025-06-02'),
    (10, 'Jonas Weber', 'Leipzig', 'Germany', '2025-06-25'),
    (11, 'Katya Novak', 'Brno', 'Czechia', '2025-07-09'),
    (12, 'Luca Bianchi', 'Turin', 'Italy', '2025-07-30'),
    (13, 'Mira Lind', 'Uppsala', 'Sweden', '2025-08-18'),
    (14, 'Noor Janssen', 'Utrecht', 'Netherlands', '2025-09-04'),
    (15, 'Oscar Silva', 'Porto', 'Portugal', '2025-09-27'),
    (16, 'Paula Ortiz', 'Valencia', 'Spain', '2025-10-13'),
    (17, 'Quentin Roux', 'Nantes', 'France', '2025-11-05'),
    (18, 'Rosa Keller', 'Leipzig', 'Germany', '2025-12-01');

INSERT INTO products VALUES
    (1, 'Trail running shoes', 'shoes', 119.00),
    (2, 'Leather boots', 'shoes', 165.50),
    (3, 'Canvas sneakers', 'shoes', 59.90),
    (4, 'Rain jacket', 'clothing', 89.00),
    (5, 'Wool sweater', 'clothing', 74.50),
    (6, 'Cotton t-shirt', 'clothing', 19.99),
    (7, 'Hiking backpack', 'bags', 129.00),
    (8, 'Leather wallet', 'bags', 45.00),
    (9, 'Water bottle', 'accessories', 24.90),
    (10, 'Wool hat', 'accessories', 22.00),
    (11, 'Sunglasses', 'accessories', 99.00),
    (12, 'Headlamp', 'accessories', 34.50);

INSERT INTO orders VALUES
    (1, 1, 1, 1, '2026-01-05', 'delivered'),
    (2, 1, 9, 2, '2026-01-05', 'delivered'),
    (3, 2, 4, 1, '2026-01-09', 'delivered'),
    (4, 3, 2, 1, '2026-01-12', 'delivered'),
    (5, 3, 10, 1, '2026-01-12', 'delivered'),
    (6, 4, 6, 3, '2026-01-18', 'cancelled'),
    (7, 5, 7, 1, '2026-01-21', 'delivered'),
    (8, 6, 3, 1, '2026-01-27', 'delivered'),
    (9, 7, 5, 2, '2026-02-02', 'delivered'),
    (10, 8, 11, 1, '2026-02-06', 'delivered'),
    (11, 2, 12, 1, '2026-02-10', 'delivered'),
    (12, 9, 1, 1, '2026-02-14', 'delivered'),
    (13, 10, 8, 1, '2026-02-19', 'cancelled'),
    (14, 11, 4, 1, '2026-02-23', 'delivered'),
    (15, 1, 5, 1, '2026-03-01', 'delivered'),
    (16, 12, 2, 1, '2026-03-04', 'delivered'),
    (17, 13, 9, 4, '2026-03-09', 'delivered'),
    (18, 14, 7, 1, '2026-03-13', 'delivered'),
    (19, 5, 10, 2, '2026-03-17', 'delivered'),
    (20, 6, 6, 5, '2026-03-22', 'delivered'),
    (21, 15, 1, 1, '2026-03-28', 'delivered'),
    (22, 3, 11, 1, '2026-04-02', 'delivered'),
    (23, 7, 12, 2, '2026-04-07', 'delivered'),
    (24, 9, 4, 1, '2026-04-11', 'cancelled'),
    (25, 16, 3, 2, '2026-04-16', 'delivered'),
    (26, 2, 1, 1, '2026-04-20', 'shipped'),
    (27, 8, 5, 1, '2026-04-24', 'shipped'),
    (28, 10, 2, 1, '2026-04-29', 'shipped'),
    (29, 12, 9, 3, '2026-05-03', 'shipped'),
    (30, 1, 7, 1, '2026-05-06', 'placed'),
    (31, 4, 8, 1, '2026-05-08', 'placed'),
    (32, 13, 6, 2, '2026-05-10', 'placed'),
    (33, 6, 11, 1, '2026-05-12', 'placed'),
    (34, 11, 3, 1, '2026-05-13', 'placed'),
    (35, 5, 4, 1, '2026-05-15', 'placed'),
    (36, 3, 12, 1, '2026-05-16', 'placed');
