-- Uses a version reserved for messenger-common: migrate must refuse it.
CREATE TABLE clash (id INT);
