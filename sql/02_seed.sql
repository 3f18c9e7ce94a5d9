-- Seed rows so an empty database has countries, cities and two stores to register at.
-- INSERT IGNORE on fixed ids: a stock sakila database (which has these ids) is left untouched.
SET @regstream_fk_checks = @@FOREIGN_KEY_CHECKS;
SET FOREIGN_KEY_CHECKS = 0;

INSERT IGNORE INTO country (country_id, country) VALUES
  (1, 'Argentina'), (2, 'Australia'), (3, 'Brazil'), (4, 'Canada'), (5, 'France'),
  (6, 'Germany'), (7, 'India'), (8, 'Japan'), (9, 'Mexico'), (10, 'United States');

INSERT IGNORE INTO city (city_id, city, country_id) VALUES
  (1, 'Buenos Aires', 1), (2, 'Cordoba', 1), (3, 'Sydney', 2), (4, 'Melbourne', 2),
  (5, 'Sao Paulo', 3), (6, 'Recife', 3), (7, 'Lethbridge', 4), (8, 'Toronto', 4),
  (9, 'Lyon', 5), (10, 'Toulouse', 5), (11, 'Berlin', 6), (12, 'Hamburg', 6),
  (13, 'Pune', 7), (14, 'Chennai', 7), (15, 'Osaka', 8), (16, 'Sapporo', 8),
  (17, 'Puebla', 9), (18, 'Tijuana', 9), (19, 'Woodridge', 10), (20, 'Aurora', 10);

INSERT IGNORE INTO address (address_id, address, district, city_id, postal_code, phone) VALUES
  (1, '47 MySakila Drive', 'Alberta', 7, '', ''),
  (2, '28 MySQL Boulevard', 'QLD', 3, '', ''),
  (3, '23 Workhaven Lane', 'Alberta', 7, '', '14033335568'),
  (4, '1411 Lillydale Drive', 'QLD', 3, '', '6172235589');

INSERT IGNORE INTO staff (staff_id, first_name, last_name, address_id, email, store_id, username)
VALUES
  (1, 'Mike', 'Hillyer', 3, 'Mike.Hillyer@sakilastaff.com', 1, 'Mike'),
  (2, 'Jon', 'Stephens', 4, 'Jon.Stephens@sakilastaff.com', 2, 'Jon');

INSERT IGNORE INTO store (store_id, manager_staff_id, address_id) VALUES (1, 1, 1), (2, 2, 2);

SET FOREIGN_KEY_CHECKS = @regstream_fk_checks;
