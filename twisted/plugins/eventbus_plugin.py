from twisted.application.service import ServiceMaker

eventbus = ServiceMaker("eventbus", "eventbus.tap", "A durable HTTP event bus on PostgreSQL.", "eventbus")
