;; task: clean some mug and put it in coffeemachine
;; A kitchen: a mug on the countertop must be washed in the sinkbasin before it goes in the coffeemachine.
(define (problem clean-mug-in-coffeemachine)
    (:domain alfred)
    (:objects
        agent1 - agent
        loc_bar_start loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 - location
        CounterTop_bar_1 Cabinet_bar_1 CoffeeMachine_bar_1 Sink_bar_1_bar_SinkBasin - receptacle
        Mug_bar_1 Cup_bar_1 SoapBottle_bar_1 - object
        CounterTopType CabinetType CoffeeMachineType SinkBasinType - rtype
        MugType CupType SoapBottleType - otype
    )
    (:init
        (= (total-cost) 0)
        (atLocation agent1 loc_bar_start)
        (receptacleAtLocation CounterTop_bar_1 loc_bar_1)
        (receptacleAtLocation Cabinet_bar_1 loc_bar_2)
        (receptacleAtLocation CoffeeMachine_bar_1 loc_bar_3)
        (receptacleAtLocation Sink_bar_1_bar_SinkBasin loc_bar_4)
        (receptacleType CounterTop_bar_1 CounterTopType)
        (receptacleType Cabinet_bar_1 CabinetType)
        (receptacleType CoffeeMachine_bar_1 CoffeeMachineType)
        (receptacleType Sink_bar_1_bar_SinkBasin SinkBasinType)
        (openable Cabinet_bar_1)
        (objectType Mug_bar_1 MugType)
        (objectType Cup_bar_1 CupType)
        (objectType SoapBottle_bar_1 SoapBottleType)
        (pickupable Mug_bar_1)
        (pickupable Cup_bar_1)
        (pickupable SoapBottle_bar_1)
        (isReceptacleObject Mug_bar_1)
        (isReceptacleObject Cup_bar_1)
        (cleanable Mug_bar_1)
        (cleanable Cup_bar_1)
        (inReceptacle Mug_bar_1 CounterTop_bar_1)
        (objectAtLocation Mug_bar_1 loc_bar_1)
        (inReceptacle SoapBottle_bar_1 CounterTop_bar_1)
        (objectAtLocation SoapBottle_bar_1 loc_bar_1)
        (inReceptacle Cup_bar_1 Cabinet_bar_1)
        (objectAtLocation Cup_bar_1 loc_bar_2)
        (canContain CounterTopType MugType)
        (canContain CounterTopType CupType)
        (canContain CounterTopType SoapBottleType)
        (canContain CabinetType MugType)
        (canContain CabinetType CupType)
        (canContain CabinetType SoapBottleType)
        (canContain SinkBasinType MugType)
        (canContain SinkBasinType CupType)
        (canContain CoffeeMachineType MugType)
    )
    (:goal
        (exists (?r - receptacle ?o - object)
            (and (cleanable ?o) (objectType ?o MugType) (receptacleType ?r CoffeeMachineType)
                 (isClean ?o) (inReceptacle ?o ?r)))
    )
)
