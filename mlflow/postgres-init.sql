-- Prefect's database beside MLflow's (POSTGRES_DB); run by the postgres image on first start.
CREATE DATABASE prefect;
