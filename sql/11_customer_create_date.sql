-- Stock sakila ships `customer_create_date`, a BEFORE INSERT trigger that overwrites
-- create_date with NOW(): a backfilled registration would land at load time, not in its
-- interval. Keep its intent (fill a missing date) without discarding a given one.
-- Drop-and-create is safe here: in the instant between, inserts simply keep their own date.
DROP TRIGGER IF EXISTS customer_create_date;
CREATE TRIGGER customer_create_date BEFORE INSERT ON customer FOR EACH ROW
  SET NEW.create_date = COALESCE(NEW.create_date, NOW());
