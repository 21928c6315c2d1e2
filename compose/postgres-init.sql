-- One database per site (the master's is created by POSTGRES_DB).
CREATE DATABASE alpha;
CREATE DATABASE beta;
