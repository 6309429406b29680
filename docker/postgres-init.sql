-- Runs once when the Docker volume is created: an application role that owns its database but is not a
-- superuser, as on managed services.
CREATE ROLE app LOGIN NOSUPERUSER NOCREATEROLE PASSWORD 'app';
CREATE DATABASE app OWNER app;
