;; task: put a mug in coffeemachine
;; A kitchen: the mug is in a closed cabinet, an apple and a knife lie on the countertop.
(define (problem mug-in-coffeemachine)
    (:domain alfred)
    (:objects
        agent1 - agent
        loc_bar_start loc_bar_1 loc_bar_2 loc_bar_3 loc_bar_4 loc_bar_5 - location
        CounterTop_bar_1 Cabinet_bar_1 Cabinet_bar_2 CoffeeMachine_bar_1 Sink_bar_1_bar_SinkBasin - receptacle
        Mug_bar_1 Apple_bar_1 Knife_bar_1 - object
        CounterTopType CabinetType CoffeeMachineType SinkBasinType - rtype
        MugType AppleType KnifeType - otype
    )
    (:init
        (= (total-cost) 0)
        (atLocation agent1 loc_bar_start)
        (receptacleAtLocation CounterTop_bar_1 loc_bar_1)
        (receptacleAtLocation Cabinet_bar_1 loc_bar_2)
        (receptacleAtLocation Cabinet_bar_2 loc_bar_3)
        (receptacleAtLocation CoffeeMachine_bar_1 loc_bar_4)
        (receptacleAtLocation Sink_bar_1_bar_SinkBasin loc_bar_5)
        (receptacleType CounterTop_bar_1 CounterTopType)
        (receptacleType Cabinet_bar_1 CabinetType)
        (receptacleType Cabinet_bar_2 CabinetType)
        (receptacleType CoffeeMachine_bar_1 CoffeeMachineType)
        (receptacleType Sink_bar_1_bar_SinkBasin SinkBasinType)
        (openable Cabinet_bar_1)
        (openable Cabinet_bar_2)
        (objectType Mug_bar_1 MugType)
        (objectType Apple_bar_1 AppleType)
        (objectType Knife_bar_1 KnifeType)
        (pickupable Mug_bar_1)
        (pickupable Apple_bar_1)
        (pickupable Knife_bar_1)
        (isReceptacleObject Mug_bar_1)
        (cleanable Mug_bar_1)
        (cleanable Apple_bar_1)
        (cleanable Knife_bar_1)
        (inReceptacle Mug_bar_1 Cabinet_bar_2)
        (objectAtLocation Mug_bar_1 loc_bar_3)
        (inReceptacle Apple_bar_1 CounterTop_bar_1)
        (objectAtLocation Apple_bar_1 loc_bar_1)
        (inReceptacle Knife_bar_1 CounterTop_bar_1)
        (objectAtLocation Knife_bar_1 loc_bar_1)
        (canContain CounterTopType MugType)
        (canContain CounterTopType AppleType)
        (canContain CounterTopType KnifeType)
        (canContain CabinetType MugType)
        (canContain CabinetType KnifeType)
        (canContain SinkBasinType MugType)
        (canContain SinkBasinType AppleType)
        (canContain SinkBasinType KnifeType)
        (canContain CoffeeMachineType MugType)
    )
    (:goal
        (exists (?r - receptacle ?o - object)
            (and (objectType ?o MugType) (receptacleType ?r CoffeeMachineType) (inReceptacle ?o ?r)))
    )
)
