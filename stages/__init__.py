"""affectflow.stages"""
