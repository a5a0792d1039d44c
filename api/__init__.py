"""The REST API: NeMo Customizer's wire format (Customizer, Entity Store, Data Store, Evaluator)
over customizer's flows, so existing NeMo clients work unchanged."""
