"""affectflow.pipelines"""
