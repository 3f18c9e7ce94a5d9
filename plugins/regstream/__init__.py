"""regstream: customer registrations from MySQL through Kafka to per-store window counts.

The Airflow DAGs in dags/ are thin wrappers over this package; everything here is
importable and tested without Airflow running.
"""
